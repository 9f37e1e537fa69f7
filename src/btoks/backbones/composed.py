MINI_NAME = "btoks-mini"

def load_mini(**kwargs):
    raise NotImplementedError
