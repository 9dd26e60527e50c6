"""The one error type for bad input and set-up problems."""


class InputError(SystemExit):
    """A problem with the user's input or set-up, told in one line that names the problem and the fix.

    It subclasses SystemExit on purpose: our trainers run inside the stock nnU-Net CLI
    (nnUNetv2_train, nnUNetv2_predict), which we must not patch, and Python prints a SystemExit's
    message as one line instead of a traceback. Library callers can still catch it by name.
    """

    def __init__(self, message: str):
        super().__init__(f"nnunet_autosam: {message}")

    @property
    def message(self) -> str:
        return str(self.code)
