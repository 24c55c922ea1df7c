"""Optimizers made of parts: the Transform contract, the Chain optimizer that runs a chain of
transforms behind ``torch.optim.Optimizer``, the spec language, and the tensor helpers.

``transform``  what a plugin author subclasses (:class:`Transform`) and what it is handed;
``chain``      :class:`Chain`, the one place that decides how a step runs (eager, torch's fused
               kernel, compiled; batched or not; complex and sparse parameters);
``spec``       ``adam:lr=0.01+clip_norm:max_norm=1`` parsed and bound to hyperparameters;
``ops``        helpers that take a number or a batched [K] hyperparameter alike;
``checks``     hyperparameter checks with torch.optim's messages.
"""
