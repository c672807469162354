def run(ctx, backend):
    raise NotImplementedError
