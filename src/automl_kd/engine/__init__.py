"""The search engine: the loop, one trial, how a trial ended, searched augmenter options, shared resources,
progress. :class:`automl_kd.engine.search.Search` is the entry point (re-exported as ``automl_kd.Search``)."""
