"""Pictures a person would rather look at than read: detected regions drawn on their image,
training curves, and which regions the words of a question attend to.

matplotlib renders off-screen (Agg); every picture is written atomically as PNG.
"""

from pipeline.pictures.attention import AttentionMap, cross_attention_map, draw_attention
from pipeline.pictures.curves import plot_training_curves
from pipeline.pictures.detections import draw_regions

__all__ = ["AttentionMap", "cross_attention_map", "draw_attention", "draw_regions", "plot_training_curves"]
