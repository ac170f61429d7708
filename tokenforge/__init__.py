"""tokenforge: the shared kernel every service uses (config, money, errors, runtime).

The bounded contexts live under `services/<context>/`; the code generated from
`protos/` lives under `tokenforge/<context>/v1/`.
"""
