"""Pieces shared by scripts/make-tiny-refs.py and scripts/train-tiny.py (both import this
module from scripts/, the directory Python puts first on sys.path for a script)."""


def fp8_channel_quantization_config(ignore):
    """config.json's quantization_config for the GLM-4.7-FP8 format: compressed-tensors,
    F8_E4M3 weights with one scale per output channel, activations quantised per token at
    run time; ignore names the modules left unquantised."""
    return {
        "quant_method": "compressed-tensors",
        "format": "float-quantized",
        "quantization_status": "compressed",
        "config_groups": {"group_0": {
            "targets": ["Linear"],
            "weights": {"num_bits": 8, "type": "float", "strategy": "channel",
                        "symmetric": True, "dynamic": False},
            "input_activations": {"num_bits": 8, "type": "float", "strategy": "token",
                                  "symmetric": True, "dynamic": True},
        }},
        "ignore": ignore,
    }


def eager_reference_config(cfg_dir, note=print):
    """The checkpoint's config for a transformers reference model fed dequantised weights:
    quantization_config dropped, eager attention and eager experts. note(text) reports a
    setting the config would not take."""
    from transformers import AutoConfig
    cfg = AutoConfig.from_pretrained(cfg_dir)
    if getattr(cfg, "quantization_config", None) is not None:
        try:
            delattr(cfg, "quantization_config")
        except Exception:
            cfg.quantization_config = None
    for attr, val in (("_attn_implementation", "eager"), ("_experts_implementation", "eager")):
        try:
            setattr(cfg, attr, val)
        except Exception as e:  # an older or newer config may not take it
            note("  note: could not set %s: %s" % (attr, e))
    return cfg
