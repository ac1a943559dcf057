"""dataset_info: the reader's errors, and the pixel statistics read from dataset_info.json."""

import logging
import os

import numpy as np
import pytest

from keras_alexnet import dataset_info
from keras_alexnet import decoding
from keras_alexnet import files

S = decoding.STORED_SIZE


def test_read_names_a_malformed_file(tmp_path):
  assert dataset_info.read(str(tmp_path)) is None
  (tmp_path / "dataset_info.json").write_text("{not json")
  with pytest.raises(ValueError, match="dataset_info.json is not a readable"):
    dataset_info.read(str(tmp_path))
  (tmp_path / "dataset_info.json").write_text("[1, 2]")
  with pytest.raises(ValueError, match="must hold a JSON object; found list"):
    dataset_info.read(str(tmp_path))


def test_mean_image_must_be_hw3(tmp_path):
  files.write_npy(str(tmp_path / "mean_image.npy"), np.zeros((4, 4), np.float32))
  with pytest.raises(ValueError, match=r"must be \[H, W, 3\]; found shape \(4, 4\)"):
    dataset_info.read_mean_image(str(tmp_path), {"mean_image": "mean_image.npy"})
  assert dataset_info.read_mean_image(str(tmp_path), {"mean_image": None}) is None


# Statistics from dataset_info.json.


def write_info(tmp_path, **fields):
  info = {"format": "keras_alexnet", "num_classes": 2}
  info.update(fields)
  files.write_json(os.path.join(tmp_path, dataset_info.FILENAME), info)
  return str(tmp_path)


def builder_like_pca(seed=0):
  """The covariance, eigenvalues (0..255 scale, variances) and eigenvectors as the builder
  writes them."""
  pixels = np.random.default_rng(seed).normal(size=(5000, 3)) @ np.array(
      [[60, 0, 0], [55, 20, 0], [50, 10, 8]]).T
  covariance = np.cov(pixels.T, bias=True)
  values, vectors = np.linalg.eigh(covariance)
  return covariance, values[::-1], vectors[:, ::-1]


def test_statistics_from_dataset_info(tmp_path):
  covariance, values, vectors = builder_like_pca()
  mean_image = np.random.default_rng(0).uniform(0, 255, (S, S, 3)).astype(np.float32)
  files.write_npy(os.path.join(tmp_path, "mean_image.npy"), mean_image)
  data_dir = write_info(tmp_path, mean_rgb=[120.0, 110.0, 100.0],
                        mean_image="mean_image.npy", rgb_covariance=covariance.tolist(),
                        eigenvalues=values.tolist(), eigenvectors=vectors.tolist())
  stats = dataset_info.statistics_from_dataset_info(data_dir)
  np.testing.assert_allclose(stats.mean_rgb, [120, 110, 100])
  np.testing.assert_array_equal(stats.mean_image, mean_image)
  # The lighting amplitude is lambda / 255 (lambda of the 0..1 scale, times 255).
  np.testing.assert_allclose(stats.eigenvalues, values / 255, rtol=1e-6)
  np.testing.assert_allclose(stats.eigenvectors, vectors, rtol=1e-6)
  assert "published" not in stats.source


def test_published_values_on_the_imagenet_scale():
  # lambda_1 / 255 of real ImageNet: 0.2175 on the 0..1 scale is 55.46 pixel levels.
  np.testing.assert_allclose(dataset_info.IMAGENET_EIGENVALUES,
                             np.array([0.2175, 0.0188, 0.0045]) * 255)
  vectors = np.array(dataset_info.IMAGENET_EIGENVECTORS)
  np.testing.assert_allclose(vectors.T @ vectors, np.eye(3), atol=2e-4)


def test_statistics_fall_back_to_the_published_values_and_say_so(tmp_path, caplog):
  with caplog.at_level(logging.WARNING):
    stats = dataset_info.statistics_from_dataset_info(str(tmp_path))   # no dataset_info.json at all
  assert "published ImageNet" in stats.source and "published ImageNet" in caplog.text
  np.testing.assert_allclose(stats.eigenvalues, dataset_info.IMAGENET_EIGENVALUES)
  caplog.clear()
  data_dir = write_info(tmp_path, mean_rgb=[1.0, 2.0, 3.0])
  with caplog.at_level(logging.WARNING):
    stats = dataset_info.statistics_from_dataset_info(data_dir)
  np.testing.assert_allclose(stats.mean_rgb, [1, 2, 3])
  np.testing.assert_allclose(stats.eigenvalues, dataset_info.IMAGENET_EIGENVALUES)
  assert stats.mean_image is None
  assert "eigenvalues" in caplog.text and "mean_image" in caplog.text


@pytest.mark.parametrize("fields,message", [
    (dict(eigenvalues=[1.0, 2.0], eigenvectors=np.eye(3).tolist()), "eigenvalues must be"),
    (dict(eigenvalues=[3.0, 2.0, 1.0]), "only one of"),
    (dict(eigenvalues=[1.0, 2.0, 3.0], eigenvectors=np.eye(3).tolist()), "descending"),
    (dict(eigenvalues=[3.0, 2.0, 1.0], eigenvectors=(2 * np.eye(3)).tolist()), "orthonormal"),
    (dict(eigenvalues=["a", 2.0, 1.0], eigenvectors=np.eye(3).tolist()), "finite"),
    (dict(mean_rgb=[1.0, 2.0]), "mean_rgb"),
    (dict(mean_rgb=[1.0, 2.0, 300.0]), "0..255"),
    (dict(mean_image="missing.npy"), "mean image"),
])
def test_malformed_statistics_are_refused(tmp_path, fields, message):
  with pytest.raises(ValueError, match=message):
    dataset_info.statistics_from_dataset_info(write_info(tmp_path, **fields))


def test_square_rooted_eigenvalues_do_not_pass_as_eigenvalues(tmp_path):
  covariance, values, vectors = builder_like_pca()
  data_dir = write_info(tmp_path, rgb_covariance=covariance.tolist(),
                        eigenvalues=np.sqrt(values).tolist(), eigenvectors=vectors.tolist())
  with pytest.raises(ValueError, match="not the eigen-pairs"):
    dataset_info.statistics_from_dataset_info(data_dir)


def test_mean_image_of_the_wrong_size_is_refused(tmp_path):
  files.write_npy(os.path.join(tmp_path, "m.npy"), np.zeros((224, 224, 3)))
  with pytest.raises(ValueError, match="256, 256, 3"):
    dataset_info.statistics_from_dataset_info(write_info(tmp_path, mean_image="m.npy"))
