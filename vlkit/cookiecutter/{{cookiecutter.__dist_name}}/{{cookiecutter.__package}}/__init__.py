"""vlkit plugin for the {{ cookiecutter._name }} vision-language model family.

vlkit loads :mod:`{{ cookiecutter.__package }}.hooks` through the ``vlkit`` entry point;
the model code (:mod:`.vision`, :mod:`.chat`, :mod:`.checkpoint`) is imported only when a
checkpoint of this family is used.
"""

__version__ = "{{ cookiecutter.version }}"
