"""Models: HF policy/judge loading (`load`), tiny in-code models (`tiny`), flat weights (`weights`)."""
