"""Tune RELISH's head inside a Pipeline with GridSearchCV, on real human-rated sentiment.

The backbone runs once per distinct text: every candidate and every fold reuses the cached
token states, so the search costs about one featurization plus the small head's training.

    .venv/bin/python examples/grid_search_pipeline.py

RELISH_EXAMPLE_N_TEXTS=150 runs it on fewer texts (the test suite does, to keep it working).
"""

import os
import time

from sklearn.model_selection import GridSearchCV, KFold, train_test_split
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from sklearn_relish import RelishTextRegressor, cache_info
from sklearn_relish.datasets import load_vader

# Amazon review snippets (Hutto & Gilbert, ICWSM 2014): sentiment rated -4..+4 by humans.
X, y = load_vader("amazon", return_X_y=True)
n_texts = int(os.environ.get("RELISH_EXAMPLE_N_TEXTS", 1200))
X_train, X_test, y_train, y_test = train_test_split(X[:n_texts], y[:n_texts], test_size=0.25,
                                                    random_state=0)


def strip(texts):
    return [text.strip() for text in texts]


pipeline = make_pipeline(
    FunctionTransformer(strip),  # any text preprocessing fits here
    RelishTextRegressor("embedded:all-MiniLM-L6-v2", max_epochs=10,
                        random_state=0),
)
grid = {
    "relishtextregressor__n_iterations": [1, 3],
    "relishtextregressor__lr": [3e-4, 1e-3],
}
search = GridSearchCV(pipeline, grid, cv=KFold(3, shuffle=True, random_state=0), n_jobs=1)

start = time.perf_counter()
search.fit(X_train, y_train)
print(f"search: {time.perf_counter() - start:.0f} s, best {search.best_params_}")
print(f"LLM ran on {cache_info()['llm_texts']} texts for {len(set(X_train))} distinct ones")
print(f"held-out R^2: {search.score(X_test, y_test):.3f}")
