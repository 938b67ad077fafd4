"""The built-in task modules: ``cnn`` and ``mlp``, examples of the contract in
:mod:`fedchain.learning.task` that a user's own task module follows."""
