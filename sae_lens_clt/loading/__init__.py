"""Finding transcoders by name: named releases (:mod:`.releases`) and fetching their files
from the package, a local folder or the Hub (:mod:`.pretrained`)."""
