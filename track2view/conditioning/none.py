"""No conditioning: frame concatenation only. The source video is still given (its clean latents before the
target's, as for every kind) but nothing says where the target camera is: the floor any conditioning must beat."""

from __future__ import annotations

from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin

from track2view.conditioning.base import Conditioning


class NoConditioning(ModelMixin, ConfigMixin, Conditioning):
    kind = "none"
    inputs = ()

    @register_to_config
    def __init__(self, token_dim: int = 1536):
        super().__init__()

    def condition_tokens(self, tokens, inputs, patch_bias=None):
        return None
