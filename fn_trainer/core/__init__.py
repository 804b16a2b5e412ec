"""The functional core: network description and parameters, loss, Adam, the pure step,
diagnostics and data. Imports nothing else from fn_trainer."""
