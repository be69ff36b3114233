// View-parameter sampler: filled in by the sampler work (see vito_fast/data/sampler.py).
#pragma once
