"""The only module that knows how transformers' API differs between the versions we support.

transformers 5.24 renamed the KV-cache keyword ``past_key_values`` to ``cache`` (the old name is
deprecated and goes at 5.40), dropped ``cache_position`` from most forwards, and 5.0 renamed
``torch_dtype`` to ``dtype``. Everything here works from the oldest supported release to the newest
by looking at what the installed version accepts or passes, not at its version number, where it can.
"""
from __future__ import annotations

import copy
import functools
import inspect

import torch

_CACHE_KEYWORDS = ("cache", "past_key_values")


def transformers_major() -> int:
    import transformers

    return int(transformers.__version__.split(".")[0])


def dtype_kwargs(dtype) -> dict:
    """``from_pretrained``'s dtype argument under the installed version's name for it."""
    return {"dtype": dtype} if transformers_major() >= 5 else {"torch_dtype": dtype}


@functools.lru_cache(maxsize=None)
def _forward_cache_keyword(forward_cls: type) -> str:
    params = inspect.signature(forward_cls.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def cache_keyword(module: torch.nn.Module) -> str:
    """The keyword ``module.forward`` takes its KV cache under (``cache`` from 5.24 on)."""
    return _forward_cache_keyword(type(module))


def cache_kwargs(module: torch.nn.Module, cache) -> dict:
    """``{keyword: cache}`` for a forward call of ``module``, under the name it accepts."""
    return {cache_keyword(module): cache}


def output_cache(outputs):
    """The KV cache a forward returned (``outputs.cache`` from 5.24 on, else ``past_key_values``),
    read without touching the deprecated attribute, as a Cache object: some 4.x models return the
    legacy tuple, which they then warn about when it is passed back."""
    for key in _CACHE_KEYWORDS:
        value = outputs.get(key) if hasattr(outputs, "get") else getattr(outputs, key, None)
        if value is not None:
            if isinstance(value, tuple):
                from transformers import DynamicCache

                if hasattr(DynamicCache, "from_legacy_cache"):
                    value = DynamicCache.from_legacy_cache(value)
            return value
    return None


def _is_cache(value) -> bool:
    if hasattr(value, "get_seq_length"):
        return True
    # The legacy format: a tuple per layer of (key, value) tensors.
    return (isinstance(value, (tuple, list)) and len(value) > 0 and isinstance(value[0], (tuple, list))
            and len(value[0]) >= 2 and isinstance(value[0][0], torch.Tensor))


def cache_in_call(kwargs: dict):
    """The KV cache passed to a forward call, whatever keyword the installed version used for it."""
    for key in _CACHE_KEYWORDS:
        if _is_cache(kwargs.get(key)):
            return kwargs[key]
    for value in kwargs.values():
        if _is_cache(value):
            return value
    return None


def cached_length(cache) -> int:
    """Tokens already in a KV cache (a Cache object, or the legacy tuple of (key, value) per layer)."""
    if cache is None:
        return 0
    if hasattr(cache, "get_seq_length"):
        return int(cache.get_seq_length())
    try:
        return int(cache[0][0].shape[-2])
    except (IndexError, TypeError, AttributeError):
        return 0


def repeat_cache(cache, groups: int):
    """Each row of a KV cache ``groups`` times over: a Cache object, or the legacy tuple per layer."""
    if hasattr(cache, "batch_repeat_interleave"):
        cache = copy.deepcopy(cache)
        cache.batch_repeat_interleave(groups)
        return cache
    return tuple(tuple(t.repeat_interleave(groups, dim=0) for t in layer) for layer in cache)
