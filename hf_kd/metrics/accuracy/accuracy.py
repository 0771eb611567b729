"""Accuracy as an `evaluate` metric script, computed by scikit-learn, shipped so it loads without the Hub."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_DESCRIPTION = (
    "Accuracy: the share of predictions equal to the reference labels (scikit-learn's accuracy_score)."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    normalize (`bool`, defaults to `True`): if False, return the number of correct predictions instead.
    sample_weight (`list` of `float`, *optional*): per-example weights.
Returns:
    accuracy (`float`).
"""
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.accuracy_score.html"
            ],
        )

    def _compute(self, predictions, references, normalize=True, sample_weight=None):
        return {
            "accuracy": float(
                accuracy_score(references, predictions, normalize=normalize, sample_weight=sample_weight)
            )
        }
