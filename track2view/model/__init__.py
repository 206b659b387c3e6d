"""The model: frozen Wan-2.1 + LoRA + a conditioning kind (transformer.py), flow matching on the target half
(flow_matching.py), training-speed levers (speed.py, lora_ffn.py) and the export format (export.py)."""
