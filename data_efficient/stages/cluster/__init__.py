"""The cluster stage: k-means of the embeddings, then SemDeDup or SSL-prototype scores."""
