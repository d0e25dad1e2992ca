"""guard_jax's data pipeline: converters, image and video preprocessing, prompt rendering, grain loading.

It never imports training code (or guard_jax at all); configs wire the two together.
"""

from data_pipeline.image_processing import preprocess_images, smart_resize  # noqa: F401
from data_pipeline.video_processing import preprocess_videos  # noqa: F401
