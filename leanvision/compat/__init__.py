"""The one place leanvision reads transformers, diffusers and timm internals.

Everything leanvision uses from those libraries that is not a documented public API (a keyword
name, a cache object, an attention registry, a hook registry, a module path) is read through
one small module per library here: :mod:`~leanvision.compat.transformers`,
:mod:`~leanvision.compat.diffusers`, :mod:`~leanvision.compat.timm`. When upstream renames
something, the fix is one line there, and until it is made the user gets an
:class:`~leanvision.UpstreamVersionError` naming leanvision, the upstream version and the
supported window (:mod:`~leanvision.compat.versions`) instead of a failure deep inside the
library.
"""
