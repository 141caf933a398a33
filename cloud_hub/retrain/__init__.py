"""Retraining: policies that decide when (`policy`, `triggers`), the data set a run trains on
(`dataset`), and the run itself (`runner`): train, convert, validate, publish, shadow, roll out."""
