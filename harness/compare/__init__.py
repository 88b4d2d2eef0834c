"""Compare: configs on paired seeds, each recommendation ablated alone, with intervals, tests and verdicts.

identity (config hash) -> ablation (recommendations from a config diff) -> runner (runs, reused from
MLflow) -> stats / analysis (the numbers) -> plots / report (what people read) -> comparison (the command).
"""
