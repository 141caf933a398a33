"""The TFLite runtimes devices run, for validating a conversion on the one a profile names.

`targets`: which runtime a device profile names and how to run a model on it; `envs`: the
cached virtual environment holding an older runtime (tflite-runtime 2.14 on numpy<2) that the
hub's own cannot stand in for; `device_run`: a model run there, in a subprocess.
"""
