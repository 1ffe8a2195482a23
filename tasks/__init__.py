"""seqio task and mixture definitions. Importing this package registers the task builders with gin."""
from tasks import lm  # noqa: F401
from tasks import vocab  # noqa: F401
