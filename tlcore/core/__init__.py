"""What every layer shares: errors, bounded memory and atomic files, the limits one student may use, honest
numbers on small data. Imports nothing else of tlcore."""
