def handler(event, context): raise NotImplementedError  # replaced by the inventory work
