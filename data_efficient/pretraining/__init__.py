"""From a selection to training: SeqIO tasks, span corruption, Beam materialisation."""
