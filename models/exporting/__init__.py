"""Portable exports of a trained result: one self-contained model per backbone or for the
ensemble, in SavedModel, TFLite, ONNX, OpenVINO IR and `.keras`, zipped with what runs it.

`graph` builds the Keras model (uint8 pixels -> class probabilities), `formats` writes it in
each format, `bundle` zips it with labels.txt, model.json and predict.py.

Parity with the server: the server decodes with Pillow (`models.images.decode_image`) and
resizes with Pillow's bilinear filter (`resize_for_model`); an in-graph resize cannot repeat
Pillow's arithmetic (it rounds to uint8 between its two passes). So the bundled predict.py
does those two Pillow steps exactly as the server does and feeds the model arrays already at
its input size, where the in-graph resize is an exact identity; the model still takes any
size (then resized in-graph by TensorFlow's bilinear filter, which differs from Pillow's).
"""
