"""Stage datasets: TFDS array_record files written and read without TensorFlow."""
