"""Clustering unlabelled images by individual (eval.py task=cluster): the sparse graph, the methods, the tuned
threshold, clustering metrics and the outputs."""
