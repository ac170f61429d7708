"""The bounded contexts, one package each: routing, wallet, payments, usage, gateway."""
