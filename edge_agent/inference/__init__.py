"""Running the model: the ONNX and TFLite runtimes, the pipeline from parsed rows to results,
shadow comparison, and the local results feed.
"""
