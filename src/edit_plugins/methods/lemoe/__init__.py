"""LEMoE: a mixture-of-experts adaptor for lifelong editing (Wang & Li, EMNLP 2024)."""
