"""Trained model in, deployable bundle out: pure transforms, no network.

    converters.pipeline.build_bundle(model, x, y, name=..., version=..., out=...)

`model` is a scikit-learn estimator or a `source.SourceModel` from `inputs.load_model` (Keras,
ONNX, TFLite files). Step by step: `SourceModel.convert` (sklearn_onnx / onnx_input /
keras_tflite, then quantize) -> `validate.validation_report` / `check_parity` ->
`card.build_card` -> `bundle.write_bundle`. Every error is a BadDataError (ConversionError,
ParityError, QuantizationError, ...).

This package imports nothing by itself: skl2onnx takes about 2 s to import and TensorFlow much
longer, so each caller imports the module it needs, when it needs it.
"""
