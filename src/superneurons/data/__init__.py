"""Datasets: synthetic scenes, questions and their ground truth."""
