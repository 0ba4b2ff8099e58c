"""tlcore: the Transfer Learning Studio engine (never imports streamlit)."""
from .backbones import (DEFAULT_BACKBONE, BackboneSpec, Body, Preprocess, create_body, ensure_weights,
                        get_backbone_spec, imagenet_categories, import_weights, list_backbones,
                        register_backbone)
from .errors import BadImageError, TLError, WeightsUnavailableError
