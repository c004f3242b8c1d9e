"""The device runtime: what a bundle needs to be verified, run and timed, and nothing else.

Standard library, numpy and the backend's own runtime only (imported when used), with
relative imports inside the package, because this folder ships in every bundle as
`edgepipe_runtime/` beside a small launcher `run.py`, where edgepipe is not installed. The
host uses this same installed package (never a bundle's copy) for parity checks,
`--profile auto` timing, `edgepipe profile` and `edgepipe verify`, so what the build
checks is what the device runs.

    bundle.py     manifest reading, safe paths, hash checks       signature.py  Ed25519 check
    keys.py       model keys, decryption into memory              feeds.py      inputs and images
    runners/      one runner per backend + the settings → options mapping (the only one)
    benchmark.py  the timing loop                                 energy/       energy meters
    machine.py    CPU model and features                          cli.py        run.py's command line
"""
