"""seqio task and mixture definitions. Importing this package registers the task builders with gin.

  lm.py            text LM and prefix-LM tasks (and concat_and_chunk windows)
  interlinear.py   interlinear documents (Guo et al. stage 2) and source-language instructions (3)
  csr.py           code-switching restore (CSR4mBART)
  cloned.py        cloned languages, ClonedVocabulary (Schäfer et al.)
  mixtures.py      real-language mixtures: rates, temperature, stage schedules
  sources.py, dictionaries.py, languages.py, schedules.py, vocab.py: what the tasks are built from
  __main__.py      `python -m tasks show|vocab|cache`
"""
from tasks import cloned  # noqa: F401
from tasks import csr  # noqa: F401
from tasks import dictionaries  # noqa: F401
from tasks import interlinear  # noqa: F401
from tasks import lm  # noqa: F401
from tasks import mixtures  # noqa: F401
from tasks import vocab  # noqa: F401
