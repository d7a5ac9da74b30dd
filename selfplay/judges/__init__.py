"""Preference models behind one protocol (`Judge.prob(prompts, a, b) -> P(a ≻ b)`).

game (exact matrix game), reward (Bradley–Terry), pairwise (PairRM-style),
llm (LLM-as-judge); `JudgePool` spreads a batch over several servers and
`make_judge(JudgeSpec)` builds one. Submodules import transformers lazily.
"""
