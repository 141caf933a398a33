"""The secure update path: TUF metadata from the broker (mirror, fetcher), verification (verify),
chunked and resumable download (partial, crypto), the bundle, the installed models (store) and
the health gate (health); updater drives them.
"""
