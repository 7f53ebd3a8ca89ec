"""kumosubmit's built-in policies, as handlers of the SMTP events (kumosubmit.hooks).

One module per concern; ``kumosubmit.hooks.registry.BUILTINS`` lists which
event each serves, and ``KUMOSUBMIT["BUILTIN_HOOKS"]`` drops or replaces them.
"""
