"""The scorers of --mode=eval: small classes whose `run(entry, x)` returns
the scores of one entry's samples x [N, H, W, C] in [-1, 1] as the fields
of its results row (evaluation.score runs them).

  ClassifierScorer FD, precision, recall, class accuracy and classifier
                   score in the terms of a dataset's own reference
                   classifier (digits, Fashion-MNIST);
  FidelityScorer   MSE / PSNR against other entries' samples from the
                   same noise;
  InceptionScorer  FID, Inception Score, precision and recall (tfds
                   datasets), against the train split's statistics.

  SampleWriter     writes the samples in the ADM evaluator's layout.

guided/evaluation.py adds the guided ones.
"""

import dataclasses
import io
import os
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from diffusion_distillation.data import datasets
from diffusion_distillation.evaluation import fid as fid_lib
from diffusion_distillation.evaluation import inception
from diffusion_distillation.evaluation import metrics
from diffusion_distillation.evaluation import precision_recall
from diffusion_distillation.evaluation import reference_network
from diffusion_distillation.utils import files


def fidelity(x, reference_x) -> dict:
  """MSE and PSNR of samples against samples from the same noise."""
  mse, psnr = metrics.mse_and_psnr(x, reference_x)
  return {'mse': mse, 'psnr': psnr}


# FID of the distilled models in the paper's table (50,000 samples).
PAPER_FID = {'cifar10': {1: 9.12, 2: 4.51, 4: 3.00, 8: 2.57}}


class ClassifierScorer:
  """FD, precision and recall, class accuracy and classifier score of
  samples of a dataset with a reference classifier of its own
  (reference_network.SETTINGS): against the statistics of its features on
  the real test images, with the floor of as many real training images
  against those (the best FD a perfect model gets).

  settings: config.eval; dataset: config.dataset; labels: the labels the
  samples were asked for, or None (unconditional).
  """

  def __init__(self, settings, dataset, labels: np.ndarray | None):
    self._batch_size = settings.batch_size
    self._labels = labels
    classifier = reference_network.SETTINGS[dataset.name]
    if settings.get('classifier_train_steps'):
      classifier = dataclasses.replace(
          classifier, train_steps=settings.classifier_train_steps
      )
    data_dir = dataset.get('data_dir', '')
    self.network = reference_network.ReferenceNetwork(
        classifier, data_dir=data_dir
    )
    self.test = reference_network.split_images(dataset.name, 'test', data_dir)
    train = reference_network.split_images(dataset.name, 'train', data_dir)
    self.test_features = self.features(self.test.images)
    self.test_stats = metrics.feature_stats(self.test_features)
    self.floor_count = min(settings.num_samples, len(train.labels))
    order = np.random.default_rng(settings.seed).permutation(len(train.labels))
    self.floor = self.distribution_scores(
        train.images[order[: self.floor_count]]
    )

  def features(self, images):
    return metrics.batched_features(
        self.network.features, images, batch_size=self._batch_size
    )

  def logits(self, images):
    return metrics.batched_features(
        self.network.logits, images, batch_size=self._batch_size
    )

  def fd(self, images) -> float:
    return metrics.frechet_distance(
        metrics.feature_stats(self.features(images)), self.test_stats
    )

  def distribution_scores(self, images) -> dict:
    """FD, precision and recall (k = 3) against the test images."""
    features = self.features(images)
    precision, recall = precision_recall.precision_recall(
        self.test_features, features, dtype='float32'
    )
    return {
        'fd': metrics.frechet_distance(
            metrics.feature_stats(features), self.test_stats
        ),
        'precision': precision,
        'recall': recall,
    }

  def run(self, entry, x) -> dict:
    del entry  # every entry is scored alike
    logits = self.logits(x)
    return {
        **self.distribution_scores(x),
        'class_accuracy': (
            None
            if self._labels is None
            else float(np.mean(np.argmax(logits, axis=1) == self._labels))
        ),
        'classifier_score': metrics.inception_score(
            logits, num_splits=min(10, len(logits))
        )[0],
    }

  def summary(self) -> dict:
    """The results' fields that describe the reference."""
    return {
        'reference_network': {
            'name': f'{self.network.settings.dataset}_classifier',
            'cache_path': self.network.cache_path,
            'settings': dataclasses.asdict(self.network.settings),
            'test_accuracy': self.network.accuracy(
                self.test.images, self.test.labels, batch_size=self._batch_size
            ),
        },
        'real_test_count': len(self.test.labels),
        'real_vs_real_fd': self.floor['fd'],
        'real_vs_real_precision': self.floor['precision'],
        'real_vs_real_recall': self.floor['recall'],
        'real_vs_real_count': self.floor_count,
    }


class FidelityScorer:
  """MSE / PSNR against other entries' samples from the same noise
  (`samples`, an evaluation.Samples that keeps them): the reference
  (`reference_of(entry)`), and with `parent_of` the model the entry was
  distilled from (each an entry, or None where there is none)."""

  def __init__(
      self,
      samples,
      reference_of: Callable,
      parent_of: Callable | None = None,
  ):
    self._samples = samples
    self._reference_of = reference_of
    self._parent_of = parent_of

  def _against(self, x, other) -> dict | None:
    return None if other is None else fidelity(x, self._samples.of(other))

  def run(self, entry, x) -> dict:
    scores = {}
    if self._parent_of:
      parent = self._parent_of(entry)
      scores['distilled_from'] = parent.name if parent else None
      scores['fidelity_to_teacher'] = self._against(x, parent)
    reference = self._reference_of(entry)
    scores['fidelity_to_reference'] = self._against(
        x, None if reference == entry else reference
    )
    return scores


def reference_statistics(
    run, network: inception.FeatureNetwork
) -> fid_lib.Reference:
  """eval.reference_stats, else the train split's statistics: read from the
  workdir's cache, or computed and cached there."""
  config, settings = run.config, run.config.eval
  if settings.reference_stats:
    return fid_lib.load_reference(
        settings.reference_stats, network, batch_size=settings.batch_size
    )
  dataset = config.dataset
  # The file name holds everything the statistics depend on.
  name = (
      f'reference_{dataset.name.replace("/", "_")}_{dataset.image_size}px_'
      f'{settings.reference_num_images}_{network.fingerprint}.npz'
  )
  path = os.path.join(run.workdir.eval_dir, name)
  if files.as_path(path).exists():
    logging.info('Reading the reference statistics from %s', path)
    return fid_lib.load_reference(path, network, batch_size=settings.batch_size)
  # TensorFlow is imported only for the datasets that stream with it.
  from diffusion_distillation.data import input_pipeline

  logging.info(
      'Computing the reference statistics of %d %s train images (once; '
      'cached as %s)',
      settings.reference_num_images,
      dataset.name,
      path,
  )
  images = input_pipeline.reference_images(
      dataset, settings.reference_num_images
  )
  reference = fid_lib.reference_from_images(
      images, network, batch_size=settings.batch_size, source=path
  )
  if jax.process_index() == 0:
    files.as_path(path).parent.mkdir(parents=True, exist_ok=True)
    fid_lib.write_reference(path, images, reference)
  return reference


class InceptionScorer:
  """FID, Inception Score, precision and recall (tfds datasets), on the
  samples rounded to uint8, against `_reference`."""

  def __init__(self, run):
    self._settings = settings = run.config.eval
    self._dataset = run.config.dataset.name
    self.network = inception.FeatureNetwork(
        inception.load_params(settings.inception_weights), run.mesh
    )
    self.reference = reference_statistics(run, self.network)

  def run(self, entry, x) -> dict:
    del entry  # every entry is scored alike
    return fid_lib.score(
        datasets.unit_interval_to_uint8(x),
        self.reference,
        self.network,
        batch_size=self._settings.batch_size,
    )

  def summary(self) -> dict:
    features = self.reference.features
    return {
        'feature_network': {
            'name': 'inception_v3_fid',
            'weights': self._settings.inception_weights,
            'fingerprint': self.network.fingerprint,
        },
        'reference': {
            'path': self.reference.source,
            'num_images': None if features is None else len(features),
        },
        'paper_fid': PAPER_FID.get(self._dataset, {}),
    }


class SampleWriter:
  """Writes each entry's samples to <workdir>/eval/samples/<entry>.npz in
  the ADM evaluator's layout: arr_0 uint8 [N, H, W, 3] (a grayscale
  channel repeated, as Inception takes RGB), arr_1 the labels of a
  class-conditional model. Adds no score."""

  def __init__(self, run, labels: np.ndarray | None):
    self._folder = os.path.join(run.workdir.eval_dir, 'samples')
    self._labels = (
        {} if labels is None else {'arr_1': np.asarray(labels, np.int32)}
    )

  def run(self, entry, x) -> dict:
    if jax.process_index() == 0:
      images = datasets.unit_interval_to_uint8(x)
      if images.shape[-1] == 1:
        images = np.repeat(images, 3, axis=-1)
      buffer = io.BytesIO()
      np.savez(buffer, arr_0=images, **self._labels)
      files.as_path(self._folder).mkdir(parents=True, exist_ok=True)
      files.write_atomically(
          os.path.join(self._folder, f'{entry.name}.npz'), buffer.getvalue()
      )
    return {}
