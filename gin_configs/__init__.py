# A package, so that gin finds `include 'gin_configs/...'` through sys.path from any working
# directory, as T5X's t5x/configs does (gin raises on a namespace package, one without this file).
