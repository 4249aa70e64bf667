"""Representation analysis cores: activations, probes, sparse autoencoders, steering, SVD.

The registered tools in ``tools/catalog/{probes,features,steering,embedding_svd}.py`` are thin
wrappers around these modules; each module is usable on its own (tests drive them with synthetic
data).
"""
