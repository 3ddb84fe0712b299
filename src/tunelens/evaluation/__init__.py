"""Evaluation: score base, fine-tuned and edited models on the same footing.

Stages: ``tasks`` (YAML / JSONL task definitions) → ``items`` (rows, limit, few-shot) → ``prompts``
→ ``mcqa`` (log-likelihood scoring) or ``generate`` (greedy decoding) → ``rouge`` /
``exact_match`` / ``format_checks`` → ``metrics`` (mean, stderr) → ``run`` (variants × tasks on
one resident model) → ``evaluate`` (results.json, results.csv, samples.jsonl).
"""
