"""F1 as an `evaluate` metric script, computed by scikit-learn, shipped so it loads without the Hub."""

import datasets
import evaluate
from sklearn.metrics import f1_score

_DESCRIPTION = (
    "F1: the harmonic mean of precision and recall (scikit-learn's f1_score); macro by default here."
)
_KWARGS_DESCRIPTION = """
Args:
    predictions (`list` of `int`): predicted labels.
    references (`list` of `int`): true labels.
    labels (`list` of `int`, *optional*): the labels to include when average is not 'binary'.
    pos_label (`int`, defaults to 1): the positive class when average='binary'.
    average (`str`, defaults to `'macro'`): 'binary', 'micro', 'macro', 'weighted' or None (per class).
    sample_weight (`list` of `float`, *optional*): per-example weights.
Returns:
    f1 (`float`, or a list of floats per class when average=None).
"""
_CITATION = "Pedregosa et al., Scikit-learn: Machine Learning in Python, JMLR 12, 2011."


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class F1(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("int32"), "references": datasets.Value("int32")}
            ),
            reference_urls=[
                "https://scikit-learn.org/stable/modules/generated/sklearn.metrics.f1_score.html"
            ],
        )

    def _compute(
        self, predictions, references, labels=None, pos_label=1, average="macro", sample_weight=None
    ):
        score = f1_score(
            references,
            predictions,
            labels=labels,
            pos_label=pos_label,
            average=average,
            sample_weight=sample_weight,
            zero_division=0,
        )
        return {"f1": score.tolist() if average is None else float(score)}
