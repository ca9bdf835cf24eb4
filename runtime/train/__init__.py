"""Training scripts of the embedded tiny model (`python -m runtime.train.<script>`)."""
