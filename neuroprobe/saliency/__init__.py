"""Saliency toolkit: fixation data, metrics (two protocols), classical models, pop-out arrays."""
