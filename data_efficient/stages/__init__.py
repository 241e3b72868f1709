"""The pipeline stages, in data order: score/embed -> density/cluster -> select.

A stage never imports a sibling stage; all of them import downward (io/,
models/, sharding).
"""
