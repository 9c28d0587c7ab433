# Homebrew formula for Impetus, kept in the repository (not in homebrew-core).
# It installs the wheel `make wheel` builds (dist/impetus-VERSION-py3-none-any.whl,
# which carries the nginx and service templates and the built dashboard) into
# a virtualenv of its own under the Cellar, with its Python dependencies from
# PyPI, and depends on Homebrew's redis and nginx, so `impetus up` and
# `sudo impetus service install --system` run a copy every account can read.
# Homebrew installs formulae from a tap only, so (docs/macos.md):
#   make wheel
#   brew tap-new "$USER/impetus"
#   cp packaging/homebrew/impetus.rb "$(brew --repo "$USER/impetus")/Formula/"
#   HOMEBREW_IMPETUS_WHEEL="$PWD/dist/impetus-0.1.0-py3-none-any.whl" brew install "$USER/impetus/impetus"
class Impetus < Formula
  desc "Team LLM server on MLX: OpenAI, Anthropic and Ollama APIs with fair batching"
  url "file://#{ENV.fetch("HOMEBREW_IMPETUS_WHEEL", "#{Dir.pwd}/dist/impetus-0.1.0-py3-none-any.whl")}"
  version "0.1.0"
  license "Apache-2.0"

  depends_on arch: :arm64 # MLX has no Metal build for Intel Macs
  depends_on :macos
  depends_on "nginx"
  depends_on "python@3.12"
  depends_on "redis"

  def install
    python = Formula["python@3.12"].opt_bin/"python3.12"
    system python, "-m", "venv", libexec
    wheel = Dir["impetus-*.whl"].first || odie("no impetus wheel in #{buildpath}: run `make wheel` first")
    system libexec/"bin/pip", "install", "--no-cache-dir", wheel
    bin.install_symlink libexec/"bin/impetus"
  end

  def caveats
    <<~EOS
      Start the stack in the foreground:    impetus up
      As services for this user:            impetus service install
      For the whole Mac, at boot:           sudo #{opt_bin}/impetus service install --system
      Check the machine:                    impetus doctor
    EOS
  end

  test do
    assert_match "usage: impetus", shell_output("#{bin}/impetus --help")
    assert_path_exists libexec/Language::Python.site_packages("python3.12")/"impetus/share/nginx/nginx.conf"
  end
end
